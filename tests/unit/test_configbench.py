"""make bench's minimal-config stage: the saving of kconfigs/minimal-l1.config, computed from two full builds."""
from harness.kernel.configbench import saving


def test_saving_from_two_full_builds():
    d = {"make_s": 1600.0, "make_cpu_s": 3000.0, "objects": 4000}
    m = {"make_s": 1000.0, "make_cpu_s": 1800.0, "objects": 2500}
    assert saving(d, m) == {"saved_make_s": 600.0, "saved_make_s_frac": 0.375, "saved_make_cpu_s": 1200.0,
                            "saved_make_cpu_s_frac": 0.4, "saved_objects": 1500, "saved_objects_frac": 0.375}


def test_saving_skips_a_figure_one_build_lacks():
    assert saving({"make_s": 10.0, "make_cpu_s": None}, {"make_s": 5.0}) == {"saved_make_s": 5.0,
                                                                             "saved_make_s_frac": 0.5}
