"""Dataset-scale jobs: loaders, the run store, local and Ray backends."""
