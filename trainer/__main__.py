"""``python -m trainer``: the training CLI (also ``torchrun --nproc_per_node=N -m trainer``)."""

from trainer.cli import main

raise SystemExit(main())
