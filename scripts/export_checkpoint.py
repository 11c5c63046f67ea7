"""Export a training checkpoint to ``.json`` + ``.safetensors`` (see :mod:`pixal3d.trainers.export`)."""
from pixal3d.trainers.export import main

if __name__ == "__main__":
    main()
