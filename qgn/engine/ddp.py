"""Which model configs leave parameters without a gradient, so that DDP must be told.

DistributedDataParallel reduces every parameter's gradient after each backward pass; a parameter
that took no part in the loss makes the second step fail ("Expected to have finished reduction in
the prior iteration..."). ``find_unused_parameters=True`` lets DDP skip them, at the price of a
walk over the autograd graph every step, so only the configs listed here pay for it.
"""

from __future__ import annotations

from typing import Any


def parameters_left_unused(config: Any) -> list[str]:
    """Why some parameters of a :class:`~qgn.modeling.QGNConfig` model get no gradient in training,
    one line per reason; ``[]`` when every parameter is reached by the loss.

    tests/test_distributed.py checks this against a real backward pass for every row of the
    paper's grid, so a new switch that leaves parameters unused fails there until it is listed.
    """
    reasons = []
    if not config.text_only and not config.lambda_nt and not config.lambda_con:
        # The no-target head feeds L_nt and L_con only (Table IV's "L_pred only" row).
        reasons.append("lambda_nt = lambda_con = 0: the no-target head is in no loss")
    if config.use_hvla and not config.text_only:
        last_read = max(int(i) for i in config.vision_extract_layers)
        late = [int(i) for i in config.vision_inject_layers if int(i) > last_read]
        if late:
            # The ViT runs up to the deepest injection, but nothing reads its tokens after the last
            # extracted layer (Table VI's row 3 1 3 3 with V = {2, 5, 8, 11}, injection at 12).
            reasons.append(
                f"vision_inject_layers {late} come after the last vision_extract_layer {last_read}: "
                "those injections and ViT layers are in no loss"
            )
    return reasons
