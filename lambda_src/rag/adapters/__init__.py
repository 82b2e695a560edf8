"""One module per outside service: the LLM, the vector store, the ONNX models, the trace queue."""
