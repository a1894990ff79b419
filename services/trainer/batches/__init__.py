"""The Batch API's control plane: batches made from uploaded files (``store``), checked line by line
(``validate``), and run through the gateway at batch priority (``runner``)."""
