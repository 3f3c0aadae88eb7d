"""Steering: a soft prompt the model reads before every chunk, carried in the archive header.

- `soft_prompt`: the variants (none, text, random or trained vectors), what the header stores of
  them and the prefix the model reads;
- `training`: fitting trained vectors to the file's chunks (encoder only);
- `hyperprior`: quantizing those vectors and coding them under a Gaussian, empirical or
  Lloyd-Max prior, whose bits count in the archive.
"""
