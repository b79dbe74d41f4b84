"""Links between GPUs (maskir.sim.hardware.Interconnect): lookups, errors, transfer time."""

import pytest

from maskir.sim.hardware import HARDWARE, INTERCONNECT, get_interconnect


def test_every_interconnect_belongs_to_a_gpu_of_the_hardware_table():
    assert set(INTERCONNECT) <= set(HARDWARE)
    assert all(name == links.name and links.node_gbps > links.network_gbps for name, links in INTERCONNECT.items())


def test_transfer_time_is_the_slower_of_the_two_links_working_at_once():
    links = get_interconnect("h100")  # 450 GB/s NVLink, 50 GB/s InfiniBand each way
    assert links.transfer_seconds(450e9, 0) == pytest.approx(1.0)
    assert links.transfer_seconds(450e9, 100e9) == pytest.approx(2.0)


def test_unknown_interconnect_lists_the_valid_names():
    with pytest.raises(ValueError, match="No interconnect figures for 'l40s'; valid names: h100, h200, a100, b200"):
        get_interconnect("l40s")
    assert get_interconnect(INTERCONNECT["a100"]) is INTERCONNECT["a100"]
