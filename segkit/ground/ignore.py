"""The label value that means "not labelled here": pixels holding it move no loss and no score.

Sparse labels use it for the part of a training window outside its row's labelled region, and
``segkit pseudo`` writes it where the model was unsure. 255 is the usual choice (PyTorch's own
examples, mmseg, smp's ``ignore_index``): it leaves every real class id of a uint8 mask free.
"""

IGNORE_INDEX = 255
