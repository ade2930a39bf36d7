"""``@hydra.main`` arguments that are warning-free on every supported Hydra.

Hydra 1.3 warns when ``version_base`` is missing; Hydra 1.4 warns when it is
given (it is deprecated there). The apps run under ``-Werror``.
"""

import hydra

HYDRA_1_4 = tuple(int(part) for part in hydra.__version__.split(".")[:2]) >= (1, 4)
MAIN_KWARGS = {} if HYDRA_1_4 else {"version_base": "1.3"}
