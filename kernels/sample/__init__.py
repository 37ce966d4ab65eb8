"""Fused sampling + span selection for one MAGNeT decoding step (see naive.py for the semantics)."""
