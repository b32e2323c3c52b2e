"""Workflows that combine training and evaluation: leave-one-site-out (`loso`), seed and run
sweeps (`sweep`), and the reuse of finished runs they share (`runs`). They sit above `train` and
`eval`, which never import each other."""
