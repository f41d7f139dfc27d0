"""Documents -> the data the training stages read: prepared text, QA pairs, preference pairs."""
