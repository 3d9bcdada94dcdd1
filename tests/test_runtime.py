"""Which device a rank binds (the Ascend part cannot run here: only the choice is tested)."""

import pytest

from sknet.errors import SknetError
from sknet.runtime import device_id_for


def test_a_rank_table_rank_binds_the_device_its_launcher_gave_it():
    assert device_id_for("Ascend", {"DEVICE_ID": "5", "RANK_ID": "1", "RANK_TABLE_FILE": "rt.json"}) == 5
    assert device_id_for("GPU", {"DEVICE_ID": "3"}) == 3


def test_msrun_ranks_leave_the_device_to_msrun():
    assert device_id_for("Ascend", {"DEVICE_ID": "0", "MS_ROLE": "MS_WORKER"}) is None


def test_cpu_and_plain_processes_bind_no_device_id():
    assert device_id_for("CPU", {"DEVICE_ID": "2"}) is None
    assert device_id_for("Ascend", {}) is None


def test_a_malformed_device_id_is_named():
    with pytest.raises(SknetError, match="DEVICE_ID='npu4': expected a device number"):
        device_id_for("Ascend", {"DEVICE_ID": "npu4"})
