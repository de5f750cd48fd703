"""Judge a synthetic set the way papers do: train a recogniser on it, verify on insightface `.bin` packs."""
