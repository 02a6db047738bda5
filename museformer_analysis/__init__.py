"""museformer_analysis: judge music by its structure: bar similarity, similarity error, metrics, pictures, audio.

Built on the tokenizer (`data_prep`), so bars are cut exactly as the model sees them. No torch and no fairseq,
so it also runs where only the tokenizer is installed (the `museformer-analyze` console script):

- `piece.py`: a MIDI or token file -> the notes of every bar, on the tokenizer's grid;
- `similarity.py`: l(i, j) of two bars, the bar x bar matrix, L_t over a corpus and the similarity error (SE);
- `metrics.py`: pitch-class entropy, scale consistency, groove consistency, empty-bar rate, notes per bar;
- `plots.py`: PNG pictures (L_t curves, similarity heatmap, piano roll), with matplotlib;
- `audio.py`: MIDI -> WAV, FLAC or Ogg Vorbis with FluidSynth and a General MIDI SoundFont;
- `report.py`: a generation run -> one report folder (pictures, audio, the set's numbers) for `report_html.py`;
- `report_html.py`: the report's self-contained HTML page (inline CSS, relative links, no script);
- `cli.py`: the `museformer-analyze stats|se|plot|heatmap|pianoroll|render|report` command.
"""
