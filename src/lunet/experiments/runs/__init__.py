"""The kinds of run, end to end: images (unconditional, per class, conditional), own table rows
(with the scikit-learn-style estimator), the 2-D mixture, and a run's export."""
