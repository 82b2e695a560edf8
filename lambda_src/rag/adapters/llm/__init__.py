"""The LLM client: the wire protocol (TGI and OpenAI payloads), SageMaker and HTTP transports."""
