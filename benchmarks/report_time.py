"""Time what `report.html` adds to a `keras-transfer train` run.

Runs the CLI in this process with the given arguments and times `write_run_report` (plots,
top losses and their explanations, the HTML) against the wall time of the whole run.

    KERAS_BACKEND=tensorflow python benchmarks/report_time.py train image \\
        --data ../shared/data/hymenoptera --backbone mobilenet \\
        --backbone-kwargs '{"alpha": 0.25}' --image-size 224 --output runs/bees

Measured on the 2-core CPU machine (shared, loaded), tensorflow, hymenoptera, MobileNet
alpha=0.25 from ../shared's weights file, the README's quickstart (10 head epochs): run 176.3 s,
report.html 4.6 s (2.6 % of the run; 8 top losses with Grad-CAM, one run).
"""

import sys
import time

from keras_transfer.cli import main as cli
from keras_transfer.report import html


def main(argv):
    spent = []
    original = html.write_run_report

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    html.write_run_report = timed
    start = time.perf_counter()
    code = cli.main(argv)
    total = time.perf_counter() - start
    report = sum(spent)
    share = 100 * report / total
    print(f"run {total:.1f} s, report.html {report:.1f} s ({share:.1f} % of the run)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
