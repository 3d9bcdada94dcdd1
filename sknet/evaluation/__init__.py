"""Evaluation: a checkpoint scored on the eval set (`evaluate`), the exported MINDIR scored itself (`exported`),
and the figures people look at in the UI (`figures`)."""
