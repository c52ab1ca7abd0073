FROM alpine
ENV legacy value with spaces
ENV A=1 B="two words" C=three\ words
ENV EMPTY=
LABEL org.opencontainers.image.title="My App" version=1.0
LABEL maintainer me@example.com
ARG X Y=1 Z="a b"
