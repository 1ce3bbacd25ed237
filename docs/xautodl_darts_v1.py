"""The xautodl DARTS-V1 search supernet (NAS-Bench-201 space), for ``fxnas inspect --model``.

    fxnas inspect --model docs/xautodl_darts_v1.py:build --input-shape 2,3,32,32 --out inspect-xautodl

Needs ``pip install xautodl``. ``build(**kwargs)`` overrides the config below.
"""

from xautodl.config_utils import dict2config
from xautodl.models import get_cell_based_tiny_net

NB201_SPACE = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def build(**overrides):
    config = dict(name="DARTS-V1", C=16, N=5, max_nodes=4, num_classes=10, space=NB201_SPACE,
                  affine=False, track_running_stats=False)
    config.update(overrides)
    return get_cell_based_tiny_net(dict2config(config, None))
