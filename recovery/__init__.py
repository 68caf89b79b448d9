"""MoTHer recovery: from a folder of model weights to the directed forest of who was fine-tuned from whom.

`recovery.stage.recover(path, **options)` is the plain-Python entry point; `recovery.stage.run(cfg)` the stage.
"""
