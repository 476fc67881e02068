"""Networks, losses and the model registry: a leaf of the package (imports no other layer but
``cxr.errors``, ``cxr.intensity``, ``cxr.modeldir`` and ``cxr.precision``).

* :mod:`cxr.models.zoo` - every classifier by name: ``create_model``, ``list_models``, ``load_classifier``.
* :mod:`cxr.models.registry` - ``@register_model`` with each model's input kind and kwargs builder.
* one file per family: ``cnn``, ``mlgcn``, ``segfusion`` (+ ``van``), ``anaxnet``, ``graph_transformer``, ``ath``.
* :mod:`cxr.models.unet` - the organ UNet network and its loader; :mod:`cxr.models.losses` - masked BCE.

This ``__init__`` imports nothing, so ``cxr.models.unet`` or ``cxr.models.losses`` do not pull in
the whole zoo (and a stage that only loads the UNet does not rerun when a classifier changes).
"""
