FROM alpine
COPY --fromm=build /a /b
