"""The wafer-map domain: taxonomy, die grids, loaders, synthetic maps, rendering, image reading, corpus."""
