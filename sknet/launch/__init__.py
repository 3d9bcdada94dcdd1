"""Distributed launch: HCCL rank tables for Ascend, and rank processes (ascend, msrun, cpu)."""
