"""kvm-dirty-harness: prove that KVM MMU patches do not lose guest writes under host reclaim."""
__version__ = "0.1.0"
