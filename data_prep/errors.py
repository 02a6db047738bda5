"""The one exception the tokenizer raises for a MIDI file it cannot encode."""


class MidiEncodeError(ValueError):
    """A MIDI file could not be encoded.

    ``reason`` is a short, stable label (``"not_midi"``, ``"no_notes"``, ...) that the CLI uses to count failures;
    the message is a readable sentence naming the file and the problem.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` when the error crosses a multiprocessing boundary
        return (type(self), (self.reason, str(self)))
