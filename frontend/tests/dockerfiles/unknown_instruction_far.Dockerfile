FROM alpine
SOMETHING else
