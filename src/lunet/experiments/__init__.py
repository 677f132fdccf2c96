"""The experiment side: data sets, preprocessing, run folders, training, evaluation, plots and benchmarks."""
