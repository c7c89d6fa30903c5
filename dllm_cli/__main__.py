"""`python -m dllm_cli` runs the `dllm` command."""

from .cli import main

if __name__ == "__main__":
    main()
