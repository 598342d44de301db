"""GANNO's core: layers become agents that set their own learning rates.

``partition`` splits a model into agents, ``features`` names what each observes, ``actions`` turns
the policy's output into LR scales, ``observer`` and ``lr_control`` read and steer the optimizer,
``rollback`` puts back the last good state after a loss spike, ``controller`` joins them into the
one observe/apply path that the environment and ``callback`` share, ``policy``/``agent`` hold the
trained network and its file, ``schedule`` records decisions.
Everything but ``callback`` is free of Lightning. The public names are exported by
``ganno_lightning`` itself.
"""
