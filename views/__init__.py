"""The view classifier's training: ``echocmr views train`` (`views.fit`), beside ``train`` and
``eval`` (it reads shards through `echocmr.read` and writes `echocmr.model.views` artifacts)."""
