"""Side models: small online models that code beside the language model, in integers (and
correctly rounded float64), so that encoder and decoder compute the same bits.

- `bias`: an adaptive per-token bias on the model's log-probabilities;
- `ngrams`: token n-grams mixed with the model's distribution;
- `match`: a match model's guess of the next token, and an adaptive map from the model's
  probability of the guess to the chance that it is right (coded as a flag).
"""
