"""``python -m facestore`` (and ``torchrun ... -m facestore build ...``): the facestore CLI."""

from facestore.cli import main

if __name__ == "__main__":
    main(prog_name="facestore")
