"""The command-line tools, one module per job; each only parses arguments and
calls the library.

=============================  ========================================  ==========================
console script                 ``python -m`` form                        module
=============================  ========================================  ==========================
``keras-supcon-train``         ``python -m keras_supcon.train``          :mod:`.train`
``keras-supcon-prune``         ``python -m keras_supcon.prune``          :mod:`.prune`
``keras-supcon-ablation``      ``python -m keras_supcon.ablation``       :mod:`.ablation`
``keras-supcon-report``        ``python -m keras_supcon.report``         :mod:`.report`
``keras-supcon-pseudo-label``  ``python -m keras_supcon.pseudo_label``   :mod:`.pseudo_label`
``keras-supcon-layerwise``     ``python -m keras_supcon.layerwise``      :mod:`.layerwise`
=============================  ========================================  ==========================

(``python -m keras_supcon.cli.train`` works too.) What they share is in
:mod:`.common`.
"""
