"""The MAC-share guide: nothing measured. The repair ranks moves by the share of MACs a decision
touches, the hand policies seed the study in their written order, nothing is screened. It is the
ablation of everything the other guides measure."""

from __future__ import annotations

from .base import Guide

__all__ = ["MacShareGuide"]


class MacShareGuide(Guide):
    name = "macs"
