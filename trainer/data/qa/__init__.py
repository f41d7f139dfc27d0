"""`data qa`: question/answer pairs from FAQs, QA files and the documents' own structure."""
