"""A failed kernel build names the first compiler error, not make's cascade of "Error 2" lines."""
import pytest

from harness.kernel.build import build_failure_summary

# Recorded from a real failed incremental build (7.2 mutant c before its fix: a page-flag test that 7.2 no
# longer has for struct page); the make lines are verbatim, paths shortened.
REAL_7_2 = """\
  CC [M]  arch/x86/kvm/../../../virt/kvm/kvm_main.o
src/virt/kvm/kvm_main.c: In function 'kvm_set_page_dirty':
src/virt/kvm/kvm_main.c:2823:46: error: implicit declaration of function 'PageSwapCache'; did you mean 'folio_test_swapcache'? [-Werror=implicit-function-declaration]
 2823 |         if (kvm_is_ad_tracked_page(page) && !PageSwapCache(page))
cc1: some warnings being treated as errors
make[5]: *** [src/scripts/Makefile.build:287: arch/x86/kvm/../../../virt/kvm/kvm_main.o] Error 1
make[4]: *** [src/scripts/Makefile.build:555: arch/x86/kvm] Error 2
make[3]: *** [src/scripts/Makefile.build:555: arch/x86] Error 2
make: *** [Makefile:260: __sub-make] Error 2""".splitlines()


@pytest.mark.parametrize("lines, expect", [
    (REAL_7_2, "kvm_main.c:2823:46: error: implicit declaration of function 'PageSwapCache'"),
    (["a.c:1:2: error: one", "b.c:3:4: error: two", "make: *** Error 2"], "a.c:1:2: error: one (+1 more)"),
    (["ld: x.o: in function `f':", "make[1]: *** [Makefile:1: vmlinux] Error 1", "make: *** Error 2"],
     "make[1]: *** [Makefile:1: vmlinux] Error 1 | make: *** Error 2"),
    (["just", "some", "output"], "just | some | output"),
])
def test_build_failure_summary(lines, expect):
    assert expect in build_failure_summary(lines)


def test_no_make_cascade_when_compiler_error_exists():
    assert "Error 2" not in build_failure_summary(REAL_7_2)
