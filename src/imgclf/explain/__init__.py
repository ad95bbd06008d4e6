"""Why the model decides: calibration, Grad-CAM and saliency, figures and the HTML report."""
