"""``python -m midi3d.eval …`` (and ``accelerate launch -m midi3d.eval …``) = ``midi3d eval …``."""

import sys

from ..cli import app

app(["eval", *sys.argv[1:]], prog_name="midi3d eval")
