"""Datasets: MSD layouts, datalists, phantoms, splits and checks."""
