"""Train a pixal3d model from a JSON config (TRELLIS2_SPEC §5.1). See ``python train.py --help`` and
:mod:`pixal3d.trainers.launch`."""
from pixal3d.trainers.launch import main

if __name__ == "__main__":
    main()
