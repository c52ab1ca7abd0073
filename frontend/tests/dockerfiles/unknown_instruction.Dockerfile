FROM alpine
RUN true

FORM scratch
