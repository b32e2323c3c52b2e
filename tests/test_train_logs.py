"""Ray Train's per-epoch dumps are filtered from our workers' logs; our own lines are not."""

import logging


def test_ray_train_report_dumps_are_quieted_under_the_names_ray_logs_them():
    import ray.train.v2._internal.execution.context as context  # logs under its file path
    import ray.train.v2._internal.execution.controller.placement_group_cleaner as cleaner
    import ray.train.v2._internal.execution.storage as storage

    from echocmr.train.loop import _quiet_ray_train_reports

    _quiet_ray_train_reports()
    assert not context.logger.isEnabledFor(logging.INFO)  # "Reporting training result ..."
    assert not storage.logger.isEnabledFor(logging.INFO)  # "Checkpoint successfully created"
    assert not cleaner.logger.isEnabledFor(logging.WARNING)  # State API polling warnings
    assert cleaner.logger.isEnabledFor(logging.ERROR)
    assert logging.getLogger("echocmr.train.loop").level == logging.NOTSET  # ours untouched
    assert logging.getLogger("ray.train").level == logging.NOTSET  # and Ray Train's others
