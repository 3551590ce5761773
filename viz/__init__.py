"""Figures only (no model code): densities on the Poincare disk and on Mollweide maps."""
