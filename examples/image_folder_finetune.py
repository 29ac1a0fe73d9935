"""Fine-tune a pretrained CNN on an image folder with keras_transfer's default recipe.

Folder data with train/ and val/, a pretrained ImageNet backbone at 224x224, random flips,
rotations and zooms, the backbone's own ImageNet normalisation inside the model; the head
fitted as a cross-validated linear probe on the frozen backbone's outputs, then the backbone
fine-tuned while the validation loss improves (`fine_tune`'s defaults); validation accuracy.

Offline, on the real data and weights in ../shared (the Keras cache seeded first):
    ../shared/tools/seed-keras-home /tmp/keras-home && export KERAS_HOME=/tmp/keras-home
    python examples/image_folder_finetune.py --data ../shared/data/hymenoptera
With internet, on your own folder and any registry backbone (weights download once):
    python examples/image_folder_finetune.py --data my_photos --backbone mobilenet_v2 --alpha 1.0
A KerasHub image preset as backbone:
    python examples/image_folder_finetune.py \
        --backbone hub:../shared/weights/keras_hub/efficientnet_lite0_imagenet
"""

import argparse
import json
import os

import keras

import keras_transfer as kt

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "hymenoptera")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with train/ and val/")
    parser.add_argument("--backbone", default="mobilenet", help="registry name or hub:<preset>")
    parser.add_argument("--alpha", type=float, default=0.25, help="MobileNet width multiplier")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", default="auto", help="head epochs (default auto: the probe)")
    parser.add_argument(
        "--finetune-epochs", default="auto", help="fine-tuning epochs (default auto; 0: none)"
    )
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=None)
    parser.add_argument("--lr", type=float, default=None, help="default: Adam 1e-3")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--report", help="write the evaluation report (JSON) here")
    parser.add_argument("--save", help="save the model and class names here (.keras)")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    train_ds, val_ds, class_names = kt.image_folder_datasets(
        args.data, image_size=args.image_size, seed=args.seed
    )
    backbone_kwargs = {"alpha": args.alpha} if args.backbone.startswith("mobilenet") else None
    model = kt.build_image_classifier(
        args.backbone,
        len(class_names),
        input_shape=(args.image_size, args.image_size, 3),
        weights="imagenet",
        backbone_kwargs=backbone_kwargs,
        augmentation=[keras.layers.RandomFlip("horizontal")],  # flips only, as the classic program
        freeze="backbone",
    )
    # Default: SGD lr 1e-3, momentum 0.9 (compile_classifier's for images, as the PyTorch tutorial).
    kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=_epochs(args.epochs),
        finetune_epochs=_epochs(args.finetune_epochs),
        optimizer=args.optimizer,
        learning_rate=args.lr,
        verbose=2,
    )
    report = kt.evaluate_classifier(model, val_ds, class_names)
    print(report)
    print(f"validation accuracy ({keras.backend.backend()}): {report.accuracy:.4f}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, indent=1)
    if args.save:
        kt.save_classifier(model, args.save, class_names)


def _epochs(text):
    return text if text == "auto" else int(text)


if __name__ == "__main__":
    main()
