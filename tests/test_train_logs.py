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


def test_the_controllers_resource_request_timeouts_are_one_line():
    """Under load the Train controller logs "Failed to send resource request ... safe to
    ignore" with a 20-line GetTimeoutError traceback, twice a run: one line now; another
    exception there keeps its traceback."""
    import io

    import ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client as client
    from ray.exceptions import GetTimeoutError

    from echocmr.train.loop import _quiet_ray_train_reports

    _quiet_ray_train_reports()
    _quiet_ray_train_reports()  # twice (hook and worker): one filter
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    client.logger.addHandler(handler)
    try:
        for exc in (GetTimeoutError("Get timed out: some object(s) not ready."),
                    RuntimeError("the coordinator died")):
            try:
                raise exc
            except Exception:
                client.logger.warning("Failed to send resource request for %s.", "train-1",
                                      exc_info=True)
    finally:
        client.logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("Failed to send resource request for train-1. (GetTimeoutError: Get "
                        "timed out: some object(s) not ready.)")
    assert lines[1] == "Failed to send resource request for train-1."
    assert lines[2] == "Traceback (most recent call last):" and "the coordinator died" in lines[-1]
    assert len(client.logger.filters) == 1
