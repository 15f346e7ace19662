"""robustarch: adversarial robustness of handcrafted and NAS-found architectures.

Reproduces and extends Devaguptapu et al., "On Adversarial Robustness: A Neural Architecture Search
perspective" (the study in ``../shared/seed``): a model zoo (``robustarch.zoo``), the study's attacks
(``robustarch.attacks``), datasets (``robustarch.data``), an evaluation engine with a crash-safe store
(``robustarch.evaluation``, ``robustarch.store``), reports (``robustarch.report``) and training
(``robustarch.train``).
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
