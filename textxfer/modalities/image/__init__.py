"""Images: the same transfer strategies over vision backbones (ViT, DeiT, ConvNeXt, ResNet, EfficientNet, ...).

The flow, in the order the code runs:
  read       (files) image folders (`split/<class>/<image>`), CSV/TSV/JSONL/Parquet files with an image-path
             column (paths relative to that file), `hub:<id>[:split]` image datasets, or `sklearn:digits`
  check      (files) every file is opened and decoded once before any model is loaded: missing, unreadable and
             non-image files stop the run naming each path (or are skipped with `data.skip_bad_images`)
  convert    (files) palette, alpha, grayscale, CMYK and 16-bit pictures become RGB exactly as transformers'
             `load_image` makes them (EXIF rotation, then `convert("RGB")`): training sees what
             `pipeline("image-classification")` sees at inference
  split      (splits) labels mapped to class ids; validation/test carved from train when not given
  transform  (transforms) evaluation: the checkpoint's own image processor; training: a random resized crop +
             flip, then the processor's own rescale/normalise
  cache      (cache) the frozen stem + lower stages run once per image, checked against the plain forward
  train      (build, modality) what the training loop calls; (classifier) a saved model, for predict/evaluate
"""
