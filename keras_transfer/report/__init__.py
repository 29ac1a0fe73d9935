"""Looking at a trained classifier: plots, explanations and the HTML report.

- `evaluation`: accuracy, per-class precision / recall / F1, the confusion matrix.
- `plots`: training curves, confusion matrix, per-class precision / recall / F1 (matplotlib).
- `gradients`: the gradient of a scalar score on tensorflow, jax and torch.
- `gradcam`: Grad-CAM heatmaps and overlays for image classifiers.
- `integrated_gradients`: word attributions for KerasHub text classifiers.
- `top_losses`: the validation examples a model gets most wrong.
- `html`: one self-contained `report.html` per run.

Import the submodules directly (`from keras_transfer.report import plots`); matplotlib is only
imported when a plot is drawn.
"""
