"""API key authorizer: lets OpenAI clients send the key as `Authorization: Bearer <key>`."""
