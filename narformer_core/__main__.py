import sys

from .cli import main
from .distributed import exit_process

code = main()
exit_process(code)      # a torchrun worker that trained leaves here (see distributed.exit_process)
sys.exit(code)
