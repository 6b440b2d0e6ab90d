"""Run files shipped with qgn (`qgn train --config NAME`)."""
